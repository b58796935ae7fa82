"""`python -m agsevnet ...` (also what `torchrun -m agsevnet train ...` runs)."""

from agsevnet.cli import main

if __name__ == "__main__":
    main()
