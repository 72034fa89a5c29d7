"""reid-instruct-editor: Instruct-ReID (IRM / IRM++) for reid-core: instruction-guided retrieval
across six ReID tasks."""
