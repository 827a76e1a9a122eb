from molgiae.cli import main

if __name__ == "__main__":  # guarded: the read-ahead process (spawn) imports this module again
    main()
