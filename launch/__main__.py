"""`python -m launch [NAME]`: the path of a shipped launch script (slurm/train.sbatch, deepspeed_multinode.sh, ...),
or of the folder that holds them."""
import sys

from data_prep import console
from launch import script

try:
    console.out(str(script(sys.argv[1] if len(sys.argv) > 1 else "")))
except FileNotFoundError as err:
    console.error(str(err))
    sys.exit(2)
