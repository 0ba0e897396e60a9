from pathlib import Path

# the team's shared test data (read-only), next to the repository
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
