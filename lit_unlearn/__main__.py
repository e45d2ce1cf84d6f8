from lit_unlearn.cli import main

main()
