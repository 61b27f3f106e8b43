"""hotexperts.studies"""

__all__: list[str] = []
