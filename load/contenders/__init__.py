"""The same work as POST /predict in the frameworks a user would otherwise pick (`load/compare.py`)."""
