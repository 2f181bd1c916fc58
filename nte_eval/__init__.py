"""nte-eval: build, attack and certify non-transferable examples."""
__version__ = "0.1.0"
