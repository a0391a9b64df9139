"""GPUs and MIG instances: discovery through NVML and placement of workers on them."""
