"""The topic and the long-running producer and consumer runs that move readings."""
