from molgiae.cli import main

if __name__ == "__main__":  # guarded: importing it (e.g. multiprocessing's spawn) must not run the CLI
    main()
