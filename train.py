"""Train a Show-and-Tell captioner: ``python train.py --help``."""
import sys

from showtell.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
