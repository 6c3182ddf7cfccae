from .config import SyntheticConfig
