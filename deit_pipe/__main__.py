from deit_pipe.cli import main

main()
