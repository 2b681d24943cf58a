"""Knowledge-graph construction, PyKEEN training and KG features (see issue 4)."""
