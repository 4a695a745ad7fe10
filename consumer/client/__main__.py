"""`python -m consumer.client …`: the same as the `rvc-trainer` console script."""

import sys

from consumer.client.cli import main

sys.exit(main())
