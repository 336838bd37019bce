import sys

from d2nn.cli import main

sys.exit(main())
