"""cxrstudy: does adding a second hospital's chest X-rays hurt some group of patients?

Reproduces Compton et al., "When More is Less" (MLHC 2023) as an MLflow Project.
"""

__version__ = "0.1.0"
