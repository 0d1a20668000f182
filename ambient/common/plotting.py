"""pyplot for the figures of the study and the GMM experiment."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no screen), imported on first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
