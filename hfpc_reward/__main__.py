import sys

from hfpc_reward.cli import main

sys.exit(main())
