"""paal-ray: Predictive Accuracy-based Active Learning for medical image segmentation on Ray.

Importing the package does no work: no Ray start, no model build, no file access.
"""

__version__ = "0.1.0"
