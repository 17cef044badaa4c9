"""The tables the consumer writes, how fresh they are, and the checks that guard them."""
