"""spark-submit entry for the `report` stage; takes the same arguments as `loganomaly report`."""

import sys

from loganomaly.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage("report", sys.argv[1:]))
