"""``python -m stream_lstm`` runs the command line."""

import sys

from stream_lstm.cli.main import main

sys.exit(main())
