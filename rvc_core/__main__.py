import sys

from rvc_core.cli import main

sys.exit(main())
