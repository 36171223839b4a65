"""Reading run records back for people: compare tables, plots, TensorBoard export.
Imports no JAX (a test checks it)."""
