"""``python -m hakit.demo --port P --home DIR --database-url URL``: run the sample app."""

import sys

from hakit.demo.app import main

sys.exit(main())
