"""hotexperts.policies"""

__all__: list[str] = []
