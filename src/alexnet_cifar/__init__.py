"""AlexNet on CIFAR-10: models, data, training engine, metrics and plots behind the workflow."""

__version__ = "0.1.0"
