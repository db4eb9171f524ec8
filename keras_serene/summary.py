"""Work in progress (being written now)."""
def summary(model, print_fn=None): raise NotImplementedError
