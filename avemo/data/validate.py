"""Command-line corpus validator: ``python -m avemo.data.validate --corpus avec2016 --root DIR``.

The checks live in ``avemo.data.corpora.validate``.
"""

import sys

from avemo.data.corpora.validate import main

if __name__ == "__main__":
    sys.exit(main())
