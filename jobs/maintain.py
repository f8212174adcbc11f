"""spark-submit entry for the `maintain` stage; takes the same arguments as `loganomaly maintain`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("maintain", sys.argv[1:]))
