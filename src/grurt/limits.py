"""Bounds on what a model file may make grurt allocate.

A model file is data from possibly untrusted hands: a few-MB compressed archive of zeros or a
protobuf that declares a huge shape must not make a loader allocate gigabytes. Each loader
checks the sizes a file declares against these limits *before* it reads or allocates.
"""

#: Parameters (float32 values: 1 GiB) one grurt .npz file may declare in all, and the elements
#: of any one array a Keras file holds or any one tensor an ONNX file holds or builds.
MAX_PARAMETERS = 2**28

#: Bytes of the JSON header of a grurt .npz file.
MAX_HEADER_BYTES = 1 << 20

#: Bytes of a JSON member (config.json, metadata.json) of a .keras archive.
MAX_JSON_BYTES = 64 << 20

#: Element ids the ONNX importer hands out while it interprets a graph at a probe size: every
#: input, layer output and state element takes one (an int64 each, so 512 MiB).
MAX_IDS = 1 << 26
