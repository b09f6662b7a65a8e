"""tandem: asymmetric teacher/student retrieval, served."""

__version__ = "0.1.0"
