"""brkcoin: run, schedule, benchmark and deploy the BRK coin miner's functions."""
