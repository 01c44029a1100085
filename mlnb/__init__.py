"""mlnb: targeted multi-label adversarial perturbations."""
__version__ = "0.1.0"
