"""`seqpar bench`: what one gradient step costs per method, length and batch (`measure`), the
run-loop overhead (`loop`), the machine's peak (`machine`) and the tables and figure (`report`)."""
