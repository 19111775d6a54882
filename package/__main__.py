"""``python -m orchestra_sdk`` for the installed package; the vendored file runs as a script itself."""

import sys

from orchestra_sdk import main

if __name__ == "__main__":
    sys.exit(main())
