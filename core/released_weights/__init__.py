"""Released weights of other ReID code bases (fast-reid, TransReID, ...) read into a
reid-core pipeline's model, for `core eval`. See conversion.py for the reader contract."""
