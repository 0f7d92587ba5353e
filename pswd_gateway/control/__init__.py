"""Infrastructure control: the 100 ms cycle and its pure controllers."""
