"""`python -m toolkit ...` is the same as the `cvae` console script (used by `accelerate launch -m toolkit`)."""

from toolkit.cli import main

if __name__ == "__main__":
    main()
