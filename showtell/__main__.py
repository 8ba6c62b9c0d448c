"""``python -m showtell COMMAND``: the same as the ``showtell`` command."""
import sys

from .cli import main

sys.exit(main(prog="python -m showtell"))
