module example.com/wordcount-exec

go 1.26.8
