import sys

from hotexperts.cli import main

sys.exit(main())
