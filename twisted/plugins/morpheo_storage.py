from twisted.application.service import ServiceMaker

morpheoStorage = ServiceMaker(
    "Morpheo Storage",
    "morpheo.tap",
    "Blob and metadata storage for the Morpheo machine-learning platform.",
    "morpheo-storage",
)
