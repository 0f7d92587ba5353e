"""``python -m pswd_gateway`` is the ``pswd-gateway`` command."""

from pswd_gateway.cli import main

main()
