"""`python -m huarizo.trainer CONFIG.yaml [--set ...]`: the entry for `torchrun` and the `deepspeed` launcher."""

import sys

from huarizo.formats import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
