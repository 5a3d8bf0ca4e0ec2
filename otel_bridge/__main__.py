"""`python -m otel_bridge`: the same command as `otel-bridge`."""

import sys

from otel_bridge.cli import main

sys.exit(main())
