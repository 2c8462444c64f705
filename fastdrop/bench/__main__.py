"""python -m fastdrop.bench: fastdrop against torch's native ops."""

from .run import main

if __name__ == "__main__":
    main()
