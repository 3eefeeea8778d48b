"""Graph passes and rewrite rules; the ordered default list lives in ``registry``."""
