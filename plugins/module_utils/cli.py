def main():
    from .errors import EXIT_OK
    print("hello", EXIT_OK)
