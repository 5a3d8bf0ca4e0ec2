import sys

from otel_bridge.cli import main

sys.exit(main())
