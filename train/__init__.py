"""Training stage: `accelerate launch train/main.py --config configs/<recipe>.yaml [key=value ...]`."""
